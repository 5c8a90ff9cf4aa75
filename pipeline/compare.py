"""`python -m pipeline.compare`: the study wing's compare command (pipeline/study/compare.py)."""

from pipeline.study.compare import main

if __name__ == "__main__":
    main()

"""`python -m pipeline.search`: the study wing's confirmed search command (pipeline/study/search.py)."""

from pipeline.study.search import main

if __name__ == "__main__":
    main()

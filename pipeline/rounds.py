"""`python -m pipeline.rounds`: the study wing's rounds command (pipeline/study/rounds.py)."""

from pipeline.study.rounds import main

if __name__ == "__main__":
    main()

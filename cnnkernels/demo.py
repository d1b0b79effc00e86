"""The README's demo: the self-check table of every operator and backend on this machine.

    python -m cnnkernels.demo
"""
from cnnkernels import selfcheck

if __name__ == "__main__":
    selfcheck.main()

"""``python -m ablate.train VARIANT ...`` = ``ablate train VARIANT ...``; the form torchrun takes:

    torchrun --nproc-per-node 2 -m ablate.train hymba-1.5b --scale proxy --out runs/h2
"""

import sys

from ablate.cli import app

if __name__ == "__main__":
    app(args=["train", *sys.argv[1:]], prog_name="ablate train")

"""``python -m ablate.train VARIANT ...`` = ``ablate train VARIANT ...``; the form torchrun takes:

    torchrun --standalone --nproc-per-node 2 -m ablate.train hymba-1.5b --scale proxy --out runs/h2

Only the train command is loaded (not every stage's CLI), so each rank starts quickly.
"""

import sys

import typer

from ablate.train.commands import train_cmd

if __name__ == "__main__":
    app = typer.Typer(add_completion=False)
    app.command()(train_cmd)
    app(args=sys.argv[1:], prog_name="ablate train")

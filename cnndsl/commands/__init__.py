"""Subcommands beyond the core, one module each (`show`, `report`, `profile`, `fmt`, `sweep`).

Each module has `add_command(command)`, where `command(name, **kwargs)` returns the
subcommand's argparse parser (cnndsl.cli.build_parser passes it), and sets `run=` on it.
Modules import numpy/numba/matplotlib inside their functions: building the parser must stay
light (`cnndsl check` never loads numba).
"""

COMMANDS = ("show", "report", "profile", "fmt", "sweep")

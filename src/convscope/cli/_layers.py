"""`convscope layers`: every addressable layer with its type, output shape, parameters and receptive field."""

from __future__ import annotations

import argparse

from ._common import add_model_args, load_spec, positive_int, print_json
from ._limits import check_fits


def register(sub: argparse._SubParsersAction) -> None:
    layers = sub.add_parser(
        "layers", help="list layers: type, output shape, parameters, receptive field",
        description="Every addressable layer (named_modules() path; NAME#k for each call of a module that runs more "
                    "than once) with its type, output shape from one probe pass, parameter count, and receptive "
                    "field at the input: size (h x w), stride and offset (top-left of unit (0,0)'s field), computed "
                    "analytically through the traced graph or, where that is not possible, measured from gradients.")
    add_model_args(layers)
    layers.add_argument("--json", action="store_true", help="print a list of dicts")
    layers.add_argument("--rf", choices=["auto", "analytic", "measured", "none"], default="auto",
                        help="receptive fields: analytic where possible, else measured (auto, default); only "
                             "analytic; only measured; or none")
    layers.add_argument("--input-size", type=positive_int, nargs=2, metavar=("H", "W"), default=None,
                        help="probe input size (default: the model's input size)")
    layers.add_argument("--match", default=None, metavar="TEXT", help="only layers whose name contains TEXT")
    layers.set_defaults(handler=run_layers)


def _cell(values) -> str:
    return "x".join(str(v) for v in values) if values is not None else "-"


def run_layers(args: argparse.Namespace) -> int:
    from ..layers import list_layers

    spec = load_spec(args)
    if args.input_size:
        check_fits(spec, args.input_size, option="--input-size", what="the probe pass")
    rows = list_layers(spec, input_size=tuple(args.input_size) if args.input_size else None,
                       receptive=None if args.rf == "none" else args.rf, seed=args.seed)
    if args.match:
        rows = [r for r in rows if args.match in r.name]
    if args.json:
        print_json([r.to_dict() for r in rows])
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)
    size = args.input_size or list(spec.input_size)
    table = Table(title=f"{spec.name}: {len(rows)} layers, probe input {spec.channels}x{size[0]}x{size[1]}",
                  title_justify="left")
    for column, justify in (("name", "left"), ("type", "left"), ("output", "right"), ("params", "right"),
                            ("RF h x w", "right"), ("stride", "right"), ("offset", "right"), ("method", "left")):
        table.add_column(column, justify=justify, no_wrap=column == "name")
    notes: dict[str, int] = {}
    for row in rows:
        rf = row.receptive_field
        method = ""
        if rf is not None:
            method = rf.method + (" (all units)" if rf.uniform else "")
            if rf.note:
                number = notes.setdefault(rf.note, len(notes) + 1)
                method += f" [{number}]"
        shape = _cell(row.shape) if row.calls else "not run"
        table.add_row(row.name, row.type, shape, f"{row.params:,}", _cell(rf.size) if rf else "-",
                      _cell(rf.stride) if rf else "-", _cell(rf.offset) if rf else "-", method)
    console.print(table)
    for note, number in notes.items():
        console.print(f"[{number}] {note}", markup=False, highlight=False)
    return 0

"""The ``lookalike`` command: a thin layer over the Python API.

One module per kind of work (indexing, querying, measuring, training, serving); the shared
options and printing in :mod:`lookalike.cli.options`. Library errors become one line on stderr
and exit status 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click

from lookalike.cli import indexing, measuring, querying, serving, training
from lookalike.cli.options import as_flags
from lookalike.errors import LookalikeError


class _Group(click.Group):
    """Turns lookalike's errors into one line on stderr and exit status 1, the parameters
    they name as the command's flags."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LookalikeError as e:
            command = self.commands.get(ctx.invoked_subcommand or "")
            raise click.ClickException(as_flags(str(e), command)) from None


@click.group(cls=_Group)
@click.version_option(package_name="lookalike")
def cli() -> None:
    """Find visually similar products in a shop's catalogue."""


for _module in (indexing, querying, measuring, training, serving):
    for _command in vars(_module).values():
        if isinstance(_command, click.Command):
            cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> None:
    cli.main(args=list(argv) if argv is not None else None, prog_name="lookalike")

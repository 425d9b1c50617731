from __future__ import annotations

import typer

app = typer.Typer(
    name="stream-infer",
    help="Live crypto candles from Kafka to ensemble price predictions. Every command has --help.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database commands (Postgres at DB_HOST).", no_args_is_help=True)
app.add_typer(db_app, name="db")

"""mkdocs hook: replace the ``<!-- bayescal-cli-reference -->`` marker with the ``--help`` of every command.

The text comes from the parser ``bayescal`` itself uses, so the CLI reference cannot drift from the code.
"""

from __future__ import annotations

import argparse

MARKER = "<!-- bayescal-cli-reference -->"
WIDTH = 100


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, width=WIDTH, max_help_position=40)


def cli_reference() -> str:
    """Markdown: the top-level help, then one section per sub-command with its help text."""
    from bayescal.cli import _parser

    parser = _parser()
    parser.formatter_class = _formatter
    sections = ["## `bayescal`", "", "```text", parser.format_help().rstrip(), "```", ""]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {action.dest: action.help for action in subparsers._choices_actions}
    for name, sub in subparsers.choices.items():
        sub.formatter_class = _formatter
        sections += [f"## `bayescal {name}`", "", summaries.get(name) or "", "", "```text",
                     sub.format_help().rstrip(), "```", ""]
    return "\n".join(sections)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (mkdocs hook signature)
    """mkdocs event: expand the marker on the page that holds it."""
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown

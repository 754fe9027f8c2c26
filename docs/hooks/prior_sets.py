"""mkdocs hook: replace the ``<!-- bayescal-prior-sets -->`` marker with every prior set under ``priors/``.

Each ``priors/<model>/<set>.toml`` file is read with :func:`bayescal.priors.load_prior_set` (the loader
calibrations use, so a file it rejects fails the build) and rendered as a table of its priors with their
rationale; the model's parameters and supports come from :data:`bayescal.pricing_models.REGISTRY`. The
page therefore cannot drift from the files or the code.
"""

from __future__ import annotations

from pathlib import Path

MARKER = "<!-- bayescal-prior-sets -->"
# characters that would start markup inside a table cell: backslash escapes, ``<`` as an entity (no raw HTML)
_ESCAPE = str.maketrans({**{c: "\\" + c for c in "\\`*_[]|"}, "<": "&lt;"})


def _text(value: object) -> str:
    """Plain text for a table cell: markup characters escaped, line breaks folded."""
    return " ".join(str(value).split()).translate(_ESCAPE)


def _kwargs(kwargs: dict) -> str:
    """``mu = -1.2, sigma = 0.75`` as inline code (values as the loader parsed them; nested priors as dicts)."""
    return "`" + ", ".join(f"{key} = {value!r}" for key, value in kwargs.items()) + "`" if kwargs else ""


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n\n")[0].replace("\n", " ")


def prior_sets() -> str:
    """Markdown: per registered model, its parameters and one table per prior-set file."""
    from bayescal.likelihoods import LIKELIHOODS, IVLikelihood
    from bayescal.paths import priors_dir, project_root
    from bayescal.pricing_models import REGISTRY
    from bayescal.priors import load_prior_set

    root = project_root()
    noise = {p for cls in (IVLikelihood, *LIKELIHOODS.values()) for p in cls.noise_parameters}
    files: dict[str, list[Path]] = {}
    for path in sorted(priors_dir().glob("*/*.toml")):
        files.setdefault(path.parent.name, []).append(path)
    folders = [key for key in REGISTRY if key in files] + sorted(set(files) - set(REGISTRY))
    lines: list[str] = []
    for folder in folders:
        cls = REGISTRY.get(folder)
        lines += [f"## `{folder}` {{#{folder}}}", ""]
        if cls is None:
            lines += [f"`priors/{folder}/` names no registered model (registered: "
                      + ", ".join(f"`{k}`" for k in REGISTRY) + ").", ""]
        else:
            params = ", ".join(f"`{p}` ({cls.supports[p]}{', per expiry' if p in cls.per_expiry else ''})"
                               for p in cls.parameters)
            lines += [f"Registry key `{folder}`, class `{cls.__module__}.{cls.__name__}`: "
                      f"{_text(_first_line(cls.__doc__))}", "",
                      f"Sampled parameters (support): {params}.", ""]
        for path in files[folder]:
            ps = load_prior_set(path)
            rel = path.relative_to(root).as_posix()
            slug = f"{folder}-{path.stem}"
            lines += [f"### `{folder}/{path.stem}` {{#{slug}}}", "",
                      f"File `{rel}`, for registry key `{ps.model}`"
                      + ("" if ps.model == folder else f" (**in the folder of `{folder}`**)") + ".", ""]
            if ps.description:
                lines += [_text(ps.description), ""]
            lines += ["| parameter | role | distribution | parameters | rationale |", "|---|---|---|---|---|"]
            for key, prior in ps.priors.items():
                spec = prior.to_dict()
                if cls is not None and key in cls.supports:
                    role = cls.supports[key] + (", per expiry" if key in cls.per_expiry else "")
                elif key in noise:
                    role = "likelihood noise, per expiry"
                else:
                    role = "not a parameter of the model"
                lines.append(f"| `{key}` | {role} | {_text(spec.get('dist', ''))} | "
                             f"{_kwargs(spec.get('kwargs', {}))} | {_text(ps.rationale.get(key, ''))} |")
            lines.append("")
            if ps.joint is not None:
                lines += [f"Joint prior over {', '.join(f'`{v}`' for v in ps.joint.variables)} "
                          f"({'Student-t, nu = ' + str(ps.joint.nu) if ps.joint.nu > 0 else 'Gaussian'} "
                          f"in unconstrained space): {_text(ps.joint.note)}", ""]
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (mkdocs hook signature)
    """mkdocs event: expand the marker on the page that holds it."""
    if MARKER in markdown:
        return markdown.replace(MARKER, prior_sets())
    return markdown


def on_serve(server, config, builder):  # noqa: ARG001 (mkdocs hook signature)
    """mkdocs event: ``mkdocs serve`` rebuilds when a prior-set file changes."""
    from bayescal.paths import priors_dir

    server.watch(str(priors_dir()))
    return server

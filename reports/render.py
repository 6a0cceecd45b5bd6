"""Render a page from its template (Jinja2, with the formatting filters) and write it in one step, so that a
reader (the Airflow plugin) never sees a half-written page."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from reports.formatting import FILTERS
from tl_tasks.files import write_text_atomic

TEMPLATES_DIR = Path(__file__).with_name("templates")


@lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment of the report templates: autoescaped, with `reports.formatting.FILTERS` as filters."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=True,  # every string from users or data (class names, params, errors) is escaped
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(FILTERS)
    return env


def render(template: str, context: dict) -> str:
    return environment().get_template(template).render(**context)


def write_page(path: Path, text: str) -> None:
    """Replace `path` in one step (`tl_tasks.files.write_text_atomic`), so a reader (the plugin) never sees a
    half-written page."""
    write_text_atomic(path, text, mode=0o644)  # readable by the api-server's user, whatever the umask

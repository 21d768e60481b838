"""Sphinx configuration of fastfork's documentation (pages in Markdown, read by MyST).

Built by .ci/run with warnings as errors:

    python -m sphinx -W --keep-going -q -b html docs build/docs

Nothing is fetched at build time: no intersphinx, and furo ships its assets.
"""

from fastfork import __version__       # the installed one (pip install -e '.[docs]')

project = "fastfork"
author = "fastfork's authors"
copyright = "fastfork's authors"
release = version = __version__

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Links to headings (page.md#heading) are checked, with GitHub's slugs, so that
# the same links work on the site and when the Markdown is read on GitHub.
myst_heading_anchors = 4
myst_enable_extensions = ["deflist"]

html_theme = "furo"
html_title = f"fastfork {release}"
html_static_path = []
# A page's Markdown source is in the repository; no copy in the site.
html_copy_source = False
html_show_sourcelink = False

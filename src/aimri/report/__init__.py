"""The self-contained HTML report: inline SVG plots, jinja2 templates with autoescaping."""

"""Reports: matplotlib figures (Agg) and one self-contained HTML file.

``html``     :func:`write_report` (sections of paragraphs, tables and base64-embedded PNG figures)
``figures``  training curves from ``metrics.csv``, per-class saliency overlays, overlays beside mask contours
``demo``     the ``sibnet demo`` pipeline (baseline vs SIBNet on synthetic data -> report.html)
"""

from .html import Figure, Section, Table, figure_png, render_html, write_report

__all__ = ["Figure", "Section", "Table", "figure_png", "render_html", "write_report"]

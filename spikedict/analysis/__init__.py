"""Analysis of fitted dictionaries: alignment of learned templates to ground truth."""

from spikedict.analysis.alignment import Alignment, align_templates, template_error

__all__ = ["Alignment", "align_templates", "template_error"]

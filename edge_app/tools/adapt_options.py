"""Defaults of ``camtrap models adapt``, apart so that building the CLI parser imports no numpy.

Both the parser (:mod:`edge_app.tools.adapt`) and the trainer
(:mod:`edge_app.tools.head_training`) read them from here.
"""

TARGET_RECALL = 0.95
"""Share of a site's non-empty frames the head must keep in cross-validation."""
MIN_EXAMPLES = 5
"""Fewest labelled empty and animal frames a head is trained on."""
KINDS = ("whole_frame", "nearest_empty")
"""Head kinds ``models adapt --kind`` trains (:mod:`edge_app.trap.detect.site_head`)."""

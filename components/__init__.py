"""gitlab-runners components: one ComponentResource per module, plus settings and config rendering."""

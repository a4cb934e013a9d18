"""Builder: validate a CrewAI project, export a commit, build a release."""

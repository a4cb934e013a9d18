"""crewship: push-to-deploy for CrewAI crews."""

__version__ = "0.1.0"

"""maild: an email-driven helpdesk daemon."""
__version__ = "0.1.0"

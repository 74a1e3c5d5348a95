"""Errors the bot turns into a message for the user who asked."""


class Refused(Exception):
    """A request the bot will not queue; the message is for the user (sent ephemeral)."""

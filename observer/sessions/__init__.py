"""The ORM session tracker and the capture of where in the app a session began."""

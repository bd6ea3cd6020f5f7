"""Sees image changes on the cascading glance-api and emits sync events; ships the cascaded:// store driver."""

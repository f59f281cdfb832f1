"""Websocket consumers: the agents' socket and the browsers' live socket."""

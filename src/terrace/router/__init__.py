"""Routing public paths to services: route tables and the data planes that forward traffic."""

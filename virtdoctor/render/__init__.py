"""Renderers: text (rich) for people, JSON (the DESIGN.md contract) for programs."""

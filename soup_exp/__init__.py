"""soup-exp: model soups as a reproducible experiment framework."""

from soup_exp.utils.resolvers import register_resolvers

__version__ = "0.1.0"

register_resolvers()

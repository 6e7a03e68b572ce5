"""The schedule language: grammar, parser, AST and expansion to compute orders."""

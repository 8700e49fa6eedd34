"""Seams to other libraries' private names: the only modules of observer that touch them."""

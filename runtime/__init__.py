"""symprop.runtime"""

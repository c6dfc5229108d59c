"""torch-free deployed runtime"""

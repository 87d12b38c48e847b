"""The three dropwatch services. They share `shared/` and never import each other."""

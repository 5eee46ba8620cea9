"""lmscale: fast large-scale language models in JAX and transfer to text classification."""

"""The five methods of pointtune; importing this package registers them."""

import unittest

import shoplib


class ProductsTest(unittest.TestCase):
    def test_every_product_has_a_price(self) -> None:
        self.assertTrue(all(p["price"] > 0 for p in shoplib.PRODUCTS))


if __name__ == "__main__":
    unittest.main()

import os
import unittest

import server


class GreetingTest(unittest.TestCase):
    def test_greeting_comes_from_the_environment(self) -> None:
        os.environ["GREETING"] = "hi"
        self.assertEqual(server.greeting(), "hi")


if __name__ == "__main__":
    unittest.main()

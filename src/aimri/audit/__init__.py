"""The audit game: plant a behaviour in a model (`plant`), then find it from the internals (the
blue team, `teams`) beside a black-box tester with the same budget, judged by one rule (`judge`)."""

"""The commands of `harness` (L7): each reads its inputs, runs the layers below, and writes its results."""

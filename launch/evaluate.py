"""Evaluate an exported model: `python launch/evaluate.py --model DIR --data FILE --out DIR` or under torchrun."""

from adakd_ds.eval.evaluate import eval_main

if __name__ == "__main__":
    eval_main()

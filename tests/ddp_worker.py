"""One rank of the 2-process DDP test: `torchrun --nproc_per_node 2 tests/ddp_worker.py CONFIG OUT`."""

import sys

from fastmuse.train.masked import TransformerTrainConfig, train_transformer

if __name__ == "__main__":
    train_transformer(TransformerTrainConfig.load(sys.argv[1]), sys.argv[2])

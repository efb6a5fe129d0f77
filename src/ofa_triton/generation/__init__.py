"""The generation engine every generating task shares (captioning, VQA, grounding): ModelScope's
beam search (beam_search.py) over OFA's cached decoder, in PyTorch or over two ONNX graphs
(graphs.py) in onnxruntime; answer lists as a trie that constrains it or as answers scored
one by one (answers.py); the export and validation of the engine (export.py) and the
generator a Triton model runs (runtime.py)."""

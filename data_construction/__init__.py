"""Offline data construction: ProgressBench-Sim (sim/), benchmark records and images from episodes
(construct), teacher CoT (teacher), unanswerable samples (unanswerable, image_edit), the tiny
tokenizer's training (tiny_tokenizer). It reads and writes through data_pipeline; data_pipeline,
the runtime input path, never imports it."""

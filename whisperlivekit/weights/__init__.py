"""Model weights: where a `--model` name is found (`resolve`), the CTranslate2 file format
(`ctranslate2_file`), conversion to an openai-whisper checkpoint (`convert`), and every format
read into our PyTorch Whisper's names (`torch_state`)."""

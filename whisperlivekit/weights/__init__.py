"""Model weights: where a `--model` name is found (`resolve`), the CTranslate2 file format
(`ctranslate2_file`) and conversion to an openai-whisper checkpoint (`convert`)."""

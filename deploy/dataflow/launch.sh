#!/usr/bin/env bash
# Launch `stembeam separate` on Dataflow with one NVIDIA L4 per worker.
#
#   PROJECT=my-project REGION=us-central1 BUCKET=my-bucket \
#   INPUT='gs://my-bucket/masters/**.flac' OUTPUT=gs://my-bucket/stems \
#   deploy/dataflow/launch.sh [extra stembeam/Beam flags...]
#
# Needs: the worker image built from deploy/Dockerfile and pushed to IMAGE, stembeam installed
# locally with the same Beam version (pip install -r requirements.txt -e .), and credentials
# that may run Dataflow jobs (gcloud auth application-default login).
set -euo pipefail

: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET}"
: "${INPUT:?set INPUT (glob or manifest)}" "${OUTPUT:?set OUTPUT (gs:// folder)}"
IMAGE=${IMAGE:-$REGION-docker.pkg.dev/$PROJECT/stembeam/worker:0.1.0}
MODEL=${MODEL:-spleeter:4stems}
RESULTS=${RESULTS:-bigquery:$PROJECT.stembeam.results}
MAX_WORKERS=${MAX_WORKERS:-8}
BATCH_SIZE=${BATCH_SIZE:-16}
THREADS=${THREADS:-8}

# One SDK process per VM (no_use_multiple_sdk_containers), so one model copy sits on the GPU,
# shared by THREADS harness threads that decode, STFT and write while the GPU runs batches.
exec stembeam separate \
  --input "$INPUT" \
  --output "$OUTPUT" \
  --model "$MODEL" \
  --results "$RESULTS" \
  --batch_size "$BATCH_SIZE" \
  --runner DataflowRunner \
  --project "$PROJECT" \
  --region "$REGION" \
  --temp_location "gs://$BUCKET/tmp" \
  --staging_location "gs://$BUCKET/staging" \
  --job_name "stembeam-$(date -u +%Y%m%d-%H%M%S)" \
  --sdk_container_image "$IMAGE" \
  --sdk_location container \
  --experiments=use_runner_v2 \
  --experiments=no_use_multiple_sdk_containers \
  --dataflow_service_options="worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver" \
  --machine_type g2-standard-8 \
  --number_of_worker_harness_threads "$THREADS" \
  --max_num_workers "$MAX_WORKERS" \
  --disk_size_gb 100 \
  "$@"

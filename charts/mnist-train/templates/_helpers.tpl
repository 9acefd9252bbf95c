{{/* mnist-train's own helpers; those both charts share are the library chart mnist-common's (charts/mnist-common, held as charts/mnist-train/charts/mnist-common). */}}

{{/* Run name: train.runName, or the release name. */}}
{{- define "mnist-train.runName" -}}
{{- default .Release.Name .Values.train.runName }}
{{- end }}

{{/* Where this run's results land: <outputBase>/<runName>. */}}
{{- define "mnist-train.output" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.train.outputBase) (include "mnist-train.runName" .) }}
{{- end }}

{{/* --cpus-per-worker: train.cpusPerWorker, else all the CPUs Ray sees on a worker pod (one worker a pod). */}}
{{- define "mnist-train.cpusPerWorker" -}}
{{- if kindIs "invalid" .Values.train.cpusPerWorker }}{{ include "mnist-common.workerCpus" . }}
{{- else }}{{ .Values.train.cpusPerWorker }}{{ end }}
{{- end }}

{{/*
Checks that span several values, which values.schema.json cannot express. Each fails the render with one clear line.
*/}}
{{- define "mnist-train.validate" -}}
{{- $t := .Values.train }}
{{- if mod (int $t.batchSize) (int $t.workers) }}
{{- fail (printf "train.batchSize %d does not split evenly over train.workers %d; use a multiple of %d" (int $t.batchSize) (int $t.workers) (int $t.workers)) }}
{{- end }}
{{- if and (not .Values.rayJob.shutdownAfterJobFinishes) .Values.rayJob.ttlSecondsAfterFinished }}
{{- fail "rayJob.ttlSecondsAfterFinished needs rayJob.shutdownAfterJobFinishes: true (there is no cluster to delete otherwise); set it to 0" }}
{{- end }}
{{- if eq (int $t.metricsPort) (int .Values.metrics.rayPort) }}
{{- fail (printf "train.metricsPort %d collides with Ray's own metrics port (metrics.rayPort); pick another, e.g. 9400" (int $t.metricsPort)) }}
{{- end }}
{{- if not (kindIs "invalid" $t.cpusPerWorker) }}
{{- $pod := float64 (include "mnist-common.workerCpus" .) }}
{{- if gt (float64 $t.cpusPerWorker) $pod }}
{{- fail (printf "train.cpusPerWorker %v is more than the %v CPUs Ray sees on a worker pod (worker.resources); no pod could hold a worker: lower it or raise the pod's" $t.cpusPerWorker $pod) }}
{{- end }}
{{- if le (mulf $t.cpusPerWorker 2) $pod }}
{{- fail (printf "train.cpusPerWorker %v would let two workers share a worker pod of %v CPUs (Ray packs them, one pod idles); leave it empty (the pod's CPUs) or set it above half of them" $t.cpusPerWorker $pod) }}
{{- end }}
{{- end }}
{{- range $group := list "head" "worker" }}
{{- if lt (int64 (include "mnist-common.objectStoreBytes" (index $.Values $group).shmSize)) 134217728 }}
{{- fail (printf "%s.shmSize %s leaves Ray's object store under its 128Mi minimum; use at least 192Mi" $group (index $.Values $group).shmSize) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The job's CLI call: every value in `train` becomes its flag, each argument shell-quoted. `job.cli.parse` of this
line gives back exactly these values (a chart test checks it).
*/}}
{{- define "mnist-train.entrypoint" -}}
{{- $t := .Values.train }}
{{- $args := list "python" "-m" "job" "train" }}
{{- $args = concat $args (list "--models" (join "," $t.models)) }}
{{- $args = concat $args (list "--epochs" (toString (int $t.epochs)) "--batch-size" (toString (int $t.batchSize))) }}
{{- $args = concat $args (list "--workers" (toString (int $t.workers)) "--cpus-per-worker" (include "mnist-train.cpusPerWorker" .)) }}
{{- $args = append $args (ternary "--gpu" "--no-gpu" .Values.gpu.enabled) }}
{{- $args = concat $args (list "--dataset" $t.dataset) }}
{{- if $t.dataUri }}
{{- $args = concat $args (list "--data-uri" $t.dataUri) }}
{{- end }}
{{- $args = concat $args (list "--output" (include "mnist-train.output" .) "--run-name" (include "mnist-train.runName" .)) }}
{{- $args = concat $args (list "--seed" (toString (int $t.seed)) "--ensemble" (toString (int $t.ensemble))) }}
{{- $args = append $args (ternary "--parallel-members" "--no-parallel-members" $t.parallelMembers) }}
{{- /* The driver runs on the head: join that cluster, never start a private local Ray. */}}
{{- $args = concat $args (list "--address" "auto") }}
{{- $args = append $args (ternary "--overwrite" "--no-overwrite" $t.overwrite) }}
{{- $linger := $t.metricsLinger }}
{{- if kindIs "invalid" $linger }}
{{- $linger = ternary 60 0 (and .Values.metrics.podMonitor.enabled (not .Values.metrics.pushgatewayUrl)) }}
{{- end }}
{{- $args = concat $args (list "--metrics-port" (toString (int $t.metricsPort)) "--metrics-linger" (toString $linger)) }}
{{- if .Values.metrics.pushgatewayUrl }}
{{- $args = concat $args (list "--pushgateway" .Values.metrics.pushgatewayUrl) }}
{{- end }}
{{- $args = concat $args (list "--max-failures" (toString (int $t.maxFailures))) }}
{{- $args = concat $args (list "--steps-per-execution" (toString (int $t.stepsPerExecution))) }}
{{- $args = concat $args (list "--start-timeout" (toString $t.startTimeout)) }}
{{- $args = concat $args (list "--checkpoint-interval" (toString $t.checkpointInterval)) }}
{{- $args = concat $args (list "--storage-retries" (toString (int $t.storageRetries))) }}
{{- $args = append $args (ternary "--mixed-precision" "--no-mixed-precision" $t.mixedPrecision) }}
{{- $args = append $args (ternary "--jit-compile" "--no-jit-compile" $t.jitCompile) }}
{{- $quoted := list }}
{{- range $args }}
{{- $quoted = append $quoted (include "mnist-train.shellQuote" .) }}
{{- end }}
{{- join " " $quoted }}
{{- end }}

{{/* POSIX shell quoting: safe words stay bare, anything else goes in single quotes with ' written as '\''. */}}
{{- define "mnist-train.shellQuote" -}}
{{- if regexMatch "^[A-Za-z0-9_./:=,+@%-]+$" . }}
{{- . }}
{{- else }}
{{- printf "'%s'" (replace "'" "'\\''" .) }}
{{- end }}
{{- end }}

"""The steps of k8s/kind_e2e.py, by concern; the script puts k8s/ on sys.path (it is run as a file) and imports these.

- settings: the names, versions and files of the flow (cluster, context, namespace, image, KubeRay, S3 Secret)
- commands: the CLIs and the Kubernetes client, pinned to the kind cluster's context; what to do when one is missing
- cluster: the kind cluster and the KubeRay operator
- images: the CPU image, built for the Docker host and loaded into the kind nodes
- services: the S3 store, Prometheus and the Pushgateway in the run's namespace
- runs: a run as a new Helm release, its RayJob waited for and its submitter's logs streamed
- checks: what a finished run must have left: results.json in the store, its metrics in Prometheus
"""

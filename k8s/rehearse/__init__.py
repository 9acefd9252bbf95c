"""The chart's pods as podman containers: what the kubelet and KubeRay 1.7 would make of the rendered objects.

pods.py is pure (rendered objects in, podman arguments and `ray start` commands out) and unit-tested in
tests/k8s; k8s/image_check.py runs what it builds.
"""

"""The Keras tutorial's three scripts (baseline MLP, simple CNN, large CNN), verbatim but for the data (loaded with
job.data) and a timing callback; each prints its figures as one line, `BENCH {json}`."""

from __future__ import annotations

import json
from typing import Any

# The tutorial's closing lines, shared by its three scripts (the CNN scripts print "CNN Error" instead).
FIT_AND_SCORE = """model = baseline_model()
model.fit(X_train, y_train, validation_data=(X_test, y_test), epochs=EPOCHS, batch_size=200, verbose=2,
          callbacks=[Timer()])
scores = model.evaluate(X_test, y_test, verbose=0)
print("Baseline Error: %.2f%%" % (100-scores[1]*100))
times["test_error_percent"] = 100 - scores[1] * 100
print("BENCH " + json.dumps(times))"""
# The tutorial's baseline MLP script, verbatim but for the data (Fashion-MNIST via job.data) and a timing callback.
TUTORIAL = """
import json, sys, time
import numpy as np
import tf_keras as keras
from tf_keras.models import Sequential
from tf_keras.layers import Dense
from tf_keras.utils import to_categorical
from job.data import load

class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        times.setdefault("first_epoch_begin", time.time())
        self.t = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        times["epoch_seconds"].append(time.perf_counter() - self.t)
        times["epoch_ends"].append(time.time())

times = {"epoch_seconds": [], "epoch_ends": []}
d = load(DATASET, DATA_URI)
(X_train, y_train), (X_test, y_test) = (d.x_train, d.y_train), (d.x_test, d.y_test)
num_pixels = X_train.shape[1] * X_train.shape[2]
X_train = X_train.reshape((X_train.shape[0], num_pixels)).astype('float32')
X_test = X_test.reshape((X_test.shape[0], num_pixels)).astype('float32')
X_train = X_train / 255
X_test = X_test / 255
y_train = to_categorical(y_train)
y_test = to_categorical(y_test)
num_classes = y_test.shape[1]
def baseline_model():
    model = Sequential()
    model.add(Dense(num_pixels, input_shape=(num_pixels,), kernel_initializer='normal', activation='relu'))
    model.add(Dense(num_classes, kernel_initializer='normal', activation='softmax'))
    model.compile(loss='categorical_crossentropy', optimizer='adam', metrics=['accuracy'])
    return model
FIT_AND_SCORE
"""
# The tutorial's two CNN scripts, verbatim but for the data and the timing callback (same preamble as above).
TUTORIAL_CNN = (
    TUTORIAL.split("num_pixels = ", 1)[0]
    + """
X_train = X_train.reshape((X_train.shape[0], 28, 28, 1)).astype('float32') / 255
X_test = X_test.reshape((X_test.shape[0], 28, 28, 1)).astype('float32') / 255
y_train = to_categorical(y_train)
y_test = to_categorical(y_test)
num_classes = y_test.shape[1]
from tf_keras.layers import Conv2D, MaxPooling2D, Dropout, Flatten
def baseline_model():
    model = Sequential()
    LAYERS
    model.compile(loss='categorical_crossentropy', optimizer='adam', metrics=['accuracy'])
    return model
FIT_AND_SCORE
"""
)
SIMPLE_CNN = """model.add(Conv2D(32, (5, 5), input_shape=(28, 28, 1), activation='relu'))
    model.add(MaxPooling2D())
    model.add(Dropout(0.2))
    model.add(Flatten())
    model.add(Dense(128, activation='relu'))
    model.add(Dense(num_classes, activation='softmax'))"""
LARGE_CNN = """model.add(Conv2D(30, (5, 5), input_shape=(28, 28, 1), activation='relu'))
    model.add(MaxPooling2D())
    model.add(Conv2D(15, (3, 3), activation='relu'))
    model.add(MaxPooling2D())
    model.add(Dropout(0.2))
    model.add(Flatten())
    model.add(Dense(128, activation='relu'))
    model.add(Dense(50, activation='relu'))
    model.add(Dense(num_classes, activation='softmax'))"""


def tutorial_scripts(epochs: int, dataset: str, data_uri: str | None = None) -> list[str]:
    """The tutorial's baseline MLP, simple CNN and large CNN scripts, for this many epochs on this data set (or the
    data at `data_uri`, as the job's --data-uri reads it)."""
    cnn_end = FIT_AND_SCORE.replace("Baseline Error", "CNN Error")
    scripts = [TUTORIAL.replace("FIT_AND_SCORE", FIT_AND_SCORE),
               TUTORIAL_CNN.replace("LAYERS", SIMPLE_CNN).replace("FIT_AND_SCORE", cnn_end),
               TUTORIAL_CNN.replace("LAYERS", LARGE_CNN).replace("FIT_AND_SCORE", cnn_end)]  # fmt: skip
    return [s.replace("EPOCHS", str(epochs)).replace("DATASET", repr(dataset)).replace("DATA_URI", repr(data_uri))
            for s in scripts]  # fmt: skip


def bench_figures(line: str) -> dict[str, Any] | None:
    """The figures a tutorial script printed on this line of its output, if it is the `BENCH {json}` line."""
    return json.loads(line[6:]) if line.startswith("BENCH ") else None

"""MediaPipe's face mesh on a face region given from outside: the FaceLandmarker's landmark,
blendshape and geometry graphs without its face detector.

The FaceLandmarker (operators.nets.face_landmarks) runs its own detector, BlazeFace short-range,
before the mesh, and finds no face on profiles, faces looking down and faces behind hands.
:class:`FaceMesh` builds the same MediaPipe Tasks graphs from the same bundle
(``mediapipe/face_landmarker.task``: ``face_landmarks_detector.tflite``, ``face_blendshapes.tflite``,
``geometry_pipeline_metadata_landmarks.binarypb``) behind a region of interest given per image
(operators.nets.face_finder gets it from YuNet): SingleFaceLandmarksDetectorGraph (the 478-point
mesh in the rotated square region, resized to 256 px, and the face presence score: no face when
below ``min_presence``, 0.5 as the FaceLandmarker's default), FaceBlendshapesGraph (jawOpen) and
FaceGeometryFromLandmarksGraph (the facial transformation matrix: head pose). The measures are
those of :func:`operators.nets.face_landmarks.measure_face`, so a face measured here and one the
FaceLandmarker found are the same numbers up to the region the mesh was computed in.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from operators.nets import weight_path
from operators.nets.face_landmarks import FACE_FILE, Face, _image, measure_face

GRAPH = "mediapipe.tasks.vision.face_landmarker.SingleFaceLandmarksDetectorGraph"
BLENDSHAPES = "mediapipe.tasks.vision.face_landmarker.FaceBlendshapesGraph"
GEOMETRY = "mediapipe.tasks.vision.face_geometry.FaceGeometryFromLandmarksGraph"


def _config(bundle: zipfile.ZipFile, min_presence: float):
    from mediapipe.framework import calculator_pb2
    from mediapipe.tasks.cc.vision.face_geometry.proto import face_geometry_graph_options_pb2 as geo_pb
    from mediapipe.tasks.cc.vision.face_landmarker.proto import face_blendshapes_graph_options_pb2 as bs_pb
    from mediapipe.tasks.cc.vision.face_landmarker.proto import face_landmarks_detector_graph_options_pb2 as lm_pb

    cfg = calculator_pb2.CalculatorGraphConfig()
    cfg.input_stream.extend(["IMAGE:image", "NORM_RECT:roi"])
    cfg.output_stream.extend(["PRESENCE_SCORE:score", "NORM_LANDMARKS:landmarks", "BLENDSHAPES:blendshapes",
                              "FACE_GEOMETRY:geometry"])
    node = cfg.node.add(calculator=GRAPH, input_stream=["IMAGE:image", "NORM_RECT:roi"],
                        output_stream=["NORM_LANDMARKS:landmarks", "PRESENCE_SCORE:score"])
    opt = lm_pb.FaceLandmarksDetectorGraphOptions(min_detection_confidence=min_presence)
    opt.base_options.model_asset.file_content = bundle.read("face_landmarks_detector.tflite")
    node.options.Extensions[lm_pb.FaceLandmarksDetectorGraphOptions.ext].CopyFrom(opt)
    cfg.node.add(calculator="ImagePropertiesCalculator", input_stream=["IMAGE:image"],
                 output_stream=["SIZE:size"])
    node = cfg.node.add(calculator=BLENDSHAPES, input_stream=["LANDMARKS:landmarks", "IMAGE_SIZE:size"],
                        output_stream=["BLENDSHAPES:blendshapes"])
    opt = bs_pb.FaceBlendshapesGraphOptions()
    opt.base_options.model_asset.file_content = bundle.read("face_blendshapes.tflite")
    node.options.Extensions[bs_pb.FaceBlendshapesGraphOptions.ext].CopyFrom(opt)
    cfg.node.add(calculator="ConcatenateNormalizedLandmarkListVectorCalculator", input_stream=["landmarks"],
                 output_stream=["landmark_lists"])
    node = cfg.node.add(calculator=GEOMETRY, input_stream=["FACE_LANDMARKS:landmark_lists", "IMAGE_SIZE:size"],
                        output_stream=["FACE_GEOMETRY:geometry"])
    opt = geo_pb.FaceGeometryGraphOptions()
    opt.geometry_pipeline_options.metadata_file.file_content = bundle.read(
        "geometry_pipeline_metadata_landmarks.binarypb")
    node.options.Extensions[geo_pb.FaceGeometryGraphOptions.ext].CopyFrom(opt)
    return cfg


class FaceMesh:
    """``face(crop, roi, region, frame_size)``: the face in the rotated square ``roi`` of a square RGB
    ``crop`` showing ``region`` (display px), or None when the mesh's presence score is low."""

    def __init__(self, model_dir: str | Path | None, min_presence: float = 0.5):
        from mediapipe.python._framework_bindings import task_runner
        path = weight_path(model_dir, FACE_FILE)
        with zipfile.ZipFile(path) as bundle:
            self.runner = task_runner.TaskRunner.create(_config(bundle, min_presence))
        self.min_presence = min_presence
        self.backend = f"{path.name}/mediapipe-graph"

    def face(self, crop: np.ndarray, roi: tuple[float, float, float, float], region: np.ndarray,
             frame_size: tuple[int, int]) -> Face | None:
        """``roi``: centre x, centre y, side (all as fractions of the crop's side) and rotation
        (radians, MediaPipe's: the angle that makes the eyes level)."""
        from mediapipe.framework.formats import rect_pb2
        from mediapipe.python import packet_creator, packet_getter
        rect = rect_pb2.NormalizedRect(x_center=roi[0], y_center=roi[1], width=roi[2], height=roi[2],
                                       rotation=roi[3])
        out = self.runner.process({"image": packet_creator.create_image(_image(crop)),
                                   "roi": packet_creator.create_proto(rect)})
        if packet_getter.get_float(out["score"]) < self.min_presence or out["landmarks"].is_empty():
            return None
        geometry = packet_getter.get_proto_list(out["geometry"])
        if not geometry:
            return None
        p = np.array([[lm.x, lm.y, lm.z] for lm in packet_getter.get_proto(out["landmarks"]).landmark], np.float64)
        jaw = packet_getter.get_proto(out["blendshapes"]).classification[25]   # jawOpen (index 25)
        m = geometry[0].pose_transform_matrix
        matrix = np.array(m.packed_data).reshape(m.rows, m.cols)
        matrix = matrix if m.layout == type(m).ROW_MAJOR else matrix.T
        return measure_face(p, crop.shape[1], region, frame_size,
                            jaw.score if jaw.label == "jawOpen" else float("nan"), matrix)

    def close(self) -> None:
        self.runner.close()

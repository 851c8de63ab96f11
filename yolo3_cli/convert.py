"""Convert a model to TFLite: full-integer int8 (default), int16x8, float16, dynamic range or float32.

    yolo3 convert -c config.json [--model IN(.h5|.weights)] [--format int8] [--samples 200] [--out OUT.tflite] [--json OUT.json]
    yolo3 convert -c config.json --model IN.h5 --qat [--qat-epochs N]     # quantization-aware training first
    yolo3 convert -c config.json --model IN.h5 --bundle DIR               # also a folder to copy to the device
    yolo3 convert -c config.json --model IN.h5 --debug --float-layers auto:2   # per-layer int8 error; the 2 worst kept float
    yolo3 convert -c config.json --model IN.h5 --nms [--input-type uint8]     # decode + NMS in the graph, for detection apps

int8 is calibrated on --samples training images (fixed seed; or images of --calibration DIR),
preprocessed exactly as at inference. --debug reports the int8 error of every layer (TFLite's
QuantizationDebugger); --float-layers keeps named layers (or auto:N, the N worst) in float.
--nms writes a variant whose graph also decodes the boxes and runs NMS (TFLite's detection
post-processing operator: boxes normalised to [0, 1], classes, scores, count), with the
config's valid.score_threshold / nms_iou / max_detections (e.g. --set valid.score_threshold=0.25
for an app). --input-type uint8 takes a camera's bytes as they are (int8 only).
--qat fine-tunes with TFMOT quantization-aware training (quantization.qat_epochs, in a run folder
beside the output) using the scheme that keeps the model's zeros and clusters, then converts the
QAT model; the report shows the zeros and distinct values per channel left in the int8 kernels.
The .tflite is loaded back with LiteRT before the command reports success.
"""

from __future__ import annotations

from .common import add_config, load, positive, write_report

HELP = "convert to int8 (full integer), float16, dynamic-range or float32 TFLite; QAT; a device bundle"


def configure(parser) -> None:
    add_config(parser)
    parser.add_argument("--model", help="model file instead of the config's model.weights")
    parser.add_argument("--format", default="int8", help="int8 (default, full integer), int16x8 (int16 activations, int8 weights), float16, dynamic or float32")
    parser.add_argument("--samples", type=int, default=200, help="calibration images for int8 (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="seed choosing the calibration images")
    parser.add_argument("--out", help="output .tflite (default: beside the model, NAME-FORMAT.tflite)")
    parser.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    parser.add_argument("--json", help="also write the report as JSON")
    parser.add_argument("--qat", action="store_true", help="quantization-aware training before the int8 conversion")
    parser.add_argument("--qat-epochs", type=int, help="override quantization.qat_epochs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar during --qat")
    parser.add_argument("--bundle", help="also write a folder for the device: the .tflite, labels, a runner needing only numpy, Pillow and LiteRT")
    parser.add_argument("--debug", action="store_true", help="int8: also write the per-layer int8 error report (NAME-debug.json/.md/.png beside the output)")
    parser.add_argument("--float-layers", metavar="LAYERS", help="int8: keep these layers in float, e.g. conv_0,conv_15, or auto:N for the N worst by --debug's report")
    parser.add_argument("--nms", action="store_true", help="the graph also decodes the boxes and runs NMS: outputs boxes (normalised), classes, scores, count")
    parser.add_argument("--input-type", default="int8", choices=("int8", "uint8"), help="int8 model input: int8 (default) or uint8 (camera bytes as they are)")
    parser.add_argument("--repair", default="none", help="int8: none (default), auto, or steps (cle, bias, ranges, adaround, qat): convert as is, then each step on top of the best "
                        "so far (cle: cross-layer equalisation, or of the activations before each depthwise convolution; bias: int8 biases corrected "
                        "to the float means; ranges: activation ranges refitted, by quantization error or to the mean of per-image extremes; adaround: learned "
                        "rounding of the int8 weights; qat: quantization-aware training from the best ranges), score each on the "
                        "validation split, keep the best")
    parser.add_argument("--calibration", metavar="DIR", help="int8 / int16x8: calibrate on images of this folder (labelled or not) instead of the training split")


def run(args) -> int:
    from compression.quantize.convert import QatOptions, convert_config, format_report
    from yolo3.bundle import check_bundle_folder, write_bundle

    positive("--qat-epochs", args.qat_epochs)
    positive("--samples", args.samples)
    config = load(args)
    if args.bundle:
        check_bundle_folder(args.bundle, args.force)
    report = convert_config(config, args.model, args.format, samples=args.samples, out=args.out, force=args.force, seed=args.seed,
                            qat=QatOptions(args.qat_epochs) if args.qat else None, progress=not args.quiet,
                            float_layers=args.float_layers, debug=args.debug, calibration=args.calibration,
                            nms=args.nms, input_type=args.input_type, repair=args.repair)  # fmt: skip
    print(format_report(report))
    if report.get("debug") and args.debug:
        from pathlib import Path

        from compression.quantize.quant_debug import format_error_table, write_error_report

        print(format_error_table(report["debug"]))
        stem = Path(report["path"]).with_name(Path(report["path"]).stem + "-debug")
        print("wrote " + ", ".join(str(p) for p in write_error_report(report["debug"], stem)))
    if args.bundle:
        bundle = write_bundle(report["path"], args.bundle, args.force)
        report["bundle"] = bundle
        print(f"wrote the device bundle {bundle['folder']} ({len(bundle['files'])} files, {bundle['bytes']:,} bytes): "
              f"pip install -r requirements.txt, then python -m yolo3.lite model.tflite IMAGE there")  # fmt: skip
    write_report(args.json, report)
    return 0

"""Every configuration key of siamjax, with its meaning. Other configs import this and override.

    python train.py --config=configs/default.py --workdir=/tmp/siamjax
    python train.py --config=configs/synthetic.py --config.batch_size=64 --workdir=...

An unknown key given on the command line fails: the ConfigDict is locked.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # Seeds parameters, augmentation, writer splits and pair sampling.
    # A workdir whose best checkpoint's encoder (same encoder and input size) starts this run's
    # encoder: pretrain (e.g. on many synthetic writers), then fine-tune on real ones. '' = none.
    c.init_from = ""

    # ---- Data ---------------------------------------------------------------------------------
    # Which TFDS builder: 'synthetic' (embedded, no download), 'sigcomp2011', 'cedar',
    # 'signature_folder'.
    c.dataset = "synthetic"
    # Folder holding the raw datasets (sigcomp2011/, cedar/ ...). '' -> $SIAMJAX_DATA_DIR.
    c.data_dir = ""
    # Where TFDS writes prepared datasets. '' -> $SIAMJAX_TFDS_DIR, else ~/tensorflow_datasets.
    c.tfds_data_dir = ""
    # Model input size (pixels); images are normalised to it once, when the dataset is built.
    c.image_height = 150
    c.image_width = 220

    # The embedded procedural dataset (used when dataset == 'synthetic').
    c.synthetic = ml_collections.ConfigDict()
    c.synthetic.num_writers = 60  # Distinct writers (each its own pen trajectory).
    c.synthetic.genuine_per_writer = 12  # Genuine signatures per writer.
    c.synthetic.forgeries_per_writer = 12  # Skilled forgeries per writer.
    c.synthetic.forgers_per_writer = 3  # Distinct forgers imitating each writer.
    c.synthetic.seed = 1234  # Generation seed: same seed, same images.
    # 'tremor': forgers copy slowly and shakily (spotted from the forgery alone); 'skilled': the
    # writer's shape kept with small errors and little hesitation, for pretraining comparison.
    c.synthetic.forgery_style = "tremor"

    # Real datasets: options shared by the real builders (sigcomp2011, cedar, signature_folder).
    c.real = ml_collections.ConfigDict()
    # Skip unreadable / unmatched files and write a report instead of stopping the build.
    c.real.skip_bad_files = False
    # What the ink pixels keep (siamjax.preprocess.INK_MODES): 'raw' (their darkness, the scan's
    # grey levels), 'normalized' (their rank within the image, mapped onto one fixed distribution)
    # or 'binary' (ink or not). Part of the prepared dataset's identity and of the model's input:
    # eval.py, siamjax-verify and the export use the training run's value.
    c.real.ink = "raw"
    # signature_folder: a root (relative to data_dir or absolute) and a regular expression on the
    # relative path with named groups `writer`, `kind` (and optionally `forger`).
    c.real.folder_root = ""
    c.real.pattern = ""
    c.real.genuine_values = "G,g,genuine,org,original"  # Values of `kind` meaning genuine.
    c.real.forged_values = "F,f,forged,forg,forgery,forgeries"  # Values of `kind` meaning forged.
    c.real.folder_name = "folder"  # Distinguishes prepared copies of different folders.

    # ---- Protocol: writer-disjoint splits and pairs -------------------------------------------
    c.split = ml_collections.ConfigDict()
    # 'fractions': split writers by val_fraction / test_fraction; 'writers': explicit lists;
    # 'kfold': fold `fold` of `num_folds` is test, the next fold validation; 'kaggle_csv': the
    # Kaggle sign_data pair lists (leaks writers and images: for comparison only).
    c.split.method = "fractions"
    c.split.val_fraction = 0.15
    c.split.test_fraction = 0.15
    c.split.val_writers = ""  # Comma-separated writer ids, for method 'writers'.
    c.split.test_writers = ""
    c.split.num_folds = 5
    c.split.fold = 0

    c.pairs = ml_collections.ConfigDict()
    # Training pairs per epoch = pairs_per_genuine * number of genuine training images.
    c.pairs.pairs_per_genuine = 4
    # Proportions of training pairs: genuine-genuine, genuine-skilled, genuine-random.
    c.pairs.positive = 0.5
    c.pairs.skilled = 0.3
    c.pairs.random = 0.2
    # Fixed evaluation pairs per genuine image of each kind (same seed -> same pairs).
    c.pairs.eval_per_genuine = 2

    # ---- Model --------------------------------------------------------------------------------
    c.model = ml_collections.ConfigDict()
    # 'signet' (SigNet-size, as in bench/), 'small' (strided, CPU and tests) or 'vgg' (3x3 convs
    # with max pooling; keeps fine stroke detail).
    c.model.encoder = "signet"
    c.model.embedding_dim = 128  # Output of the encoder's last dense layer.
    c.model.head_hidden = (64,)  # Hidden widths of the MLP head; () for a linear head.
    # 'diff' (e1 - e2, the design), 'absdiff' (|e1 - e2|), 'concat', or 'distance' (logit =
    # bias - scale * ||e1 - e2||, for the contrastive and triplet losses).
    c.model.combine = "diff"
    c.model.dtype = "float32"  # Compute dtype: 'float32' or 'bfloat16'; parameters stay float32.
    c.model.init = "torch"  # Initialisers: 'torch' (PyTorch's defaults) or 'flax' (lecun normal).
    c.model.small_width = 16  # First-layer channels of the "small" and "vgg" encoders.
    c.model.vgg_stem = 1  # 'vgg': > 1 makes the first layer a stem x stem, stride-stem patchify.
    c.model.bn_momentum = 0.9  # BatchNorm running-average momentum.
    # 'small' and 'vgg': normalisation of the conv blocks, 'batch' (BatchNorm) or 'group'
    # (GroupNorm, per image: no batch statistics); and how the last feature map becomes a vector,
    # 'flatten' (keeps positions; a large dense layer) or 'gap' (global average pooling).
    c.model.norm = "batch"
    c.model.pool = "flatten"
    # How convolutions are computed (not part of the model: checkpoints move freely between them):
    # 'xla' (XLA's own), 'matmul_dw' (weight gradients as matmuls over input windows, see
    # siamjax/conv.py) or 'auto': XLA's, except on a CPU without siamjax/xla_flags.py's XNNPACK
    # flags (an untested jaxlib), where 'matmul_dw' is faster. Pools take their fast gradient
    # (siamjax/pool.py) unless this is 'xla'.
    c.model.conv_impl = "auto"
    # Outputs of a linear writer-classification head on the embedding (0: no head). It is trained
    # only when writer_loss_weight > 0, on the genuine images of the training writers (one class
    # per writer; with fewer classes than training writers, the first N writers get them, with a
    # warning: input_pipeline.writer_classes); evaluation never uses it.
    c.model.writer_classes = 0
    # Ensemble size: M > 1 trains M independently initialised encoders and heads side by side
    # (each on its own loss, over the same batches; M times the compute); the embedding is their
    # concatenation (M * embedding_dim) and the pair logit their mean. 1: one network.
    c.model.members = 1

    # ---- Loss and optimiser -------------------------------------------------------------------
    # 'bce' on logits (the design), 'contrastive' (on the training pairs) or 'triplet' (anchor,
    # positive, negative drawn per epoch: pairs_per_genuine * genuine / 2 triplets, negatives
    # skilled : random as pairs.skilled : pairs.random). The last two train the encoder on
    # embedding distances and need model.combine = 'distance' (logit = bias - scale * distance,
    # whose two scalars a stopped-gradient BCE term calibrates during training).
    c.loss = "bce"
    # Margin of 'contrastive' (on distances) and 'triplet' (on squared distances).
    c.loss_margin = 1.0
    # Weight of an auxiliary writer-classification loss ('bce' only; needs model.writer_classes):
    # softmax cross-entropy of the writer of each genuine image of the pair batch, from its
    # embedding (SigNet-style writer features for the writer-dependent enrolments, learnt along
    # with the pair loss). 0: off.
    c.writer_loss_weight = 0.0
    # 'adagrad' (the design), 'adam', 'adamw' or 'sgd' (Nesterov momentum 0.9).
    c.optimizer = "adagrad"
    c.learning_rate = 1e-3  # Peak learning rate.
    # 'constant' (the design) or 'cosine': linear warm-up over warmup_steps, then cosine to 0.
    c.lr_schedule = "constant"
    c.warmup_steps = 0
    # Adagrad's starting accumulator. PyTorch uses 0; optax's default 0.1 damps the first updates
    # so much that the design's 1e-3 barely moves the weights.
    c.adagrad_initial_accumulator = 0.0
    c.adagrad_eps = 1e-10
    # Weight decay: added to the gradient (L2) for adagrad/adam/sgd, decoupled for adamw.
    c.weight_decay = 0.0

    # ---- Augmentation (on device, training only) ----------------------------------------------
    c.augment = ml_collections.ConfigDict()
    c.augment.noise_std = 0.0  # Std of additive Gaussian noise on [0, 1] pixels.
    # Clip the noisy image to [0, 1] (True: the background's mean rises by 0.4 noise_std) or
    # leave the noise zero-mean (False).
    c.augment.clip_noise = True
    c.augment.blur_prob = 0.0  # Probability of a Gaussian blur per image.
    c.augment.blur_sigma = 1.0  # Its sigma in pixels.
    c.augment.max_shift = 0  # Random translation up to this many pixels.
    # One random affine per image about its centre (bilinear, background fill); any > 0 turns it on.
    c.augment.max_rotation = 0.0  # Rotation up to +-this many degrees (sheet tilt).
    c.augment.max_scale = 0.0  # Scale by 1 +- up to this (signature size), e.g. 0.1.
    c.augment.max_shear = 0.0  # Horizontal shear factor up to +-this (writer's slant), e.g. 0.2.
    # Probability of a stroke-width change per image: 3x3 grey dilation or erosion (half each),
    # blended with the image by a random 0.5 to 1.
    c.augment.stroke_prob = 0.0
    # Paper texture: a smooth random field (16-pixel cells) of up to this amplitude lifts the
    # background; saturated ink stays.
    c.augment.texture_strength = 0.0
    c.augment.brightness = 0.0  # Added offset up to +-this on [0, 1] pixels.
    c.augment.contrast = 0.0  # Contrast about the image mean scaled by 1 +- up to this.
    c.augment.jpeg_prob = 0.0  # Probability of JPEG-like blockiness per image.
    c.augment.jpeg_mix = 0.3  # Its weight: image + jpeg_mix * (8x8 block means - image).

    # ---- Evaluation protocol (eval.py) -----------------------------------------------------------
    c.eval = ml_collections.ConfigDict()
    # Genuine references per questioned signature (1: the fixed pairs; 5 or 12 as in SigComp2011).
    c.eval.references = 1
    c.eval.fusion = "mean"  # How K reference scores become one: 'mean', 'max' or 'min'.
    # Writers of the split with fewer than K + 1 genuine signatures cannot be enrolled with K
    # references: eval.py refuses (one line, exit 2) unless this is True, when it evaluates the
    # other writers and metrics.json lists the ones left out.
    c.eval.allow_fewer_writers = False
    # Enrolment with K references (siamjax/enrollment.py): 'none' (the fused pair scores),
    # 'znorm' (standardised by the references' scores against each other; K >= 2), 'svm' (a
    # writer-dependent SVM on the embeddings against the training writers' genuine signatures)
    # 'svm_scaled' (the same on embeddings standardised per dimension) or 'svm_pair' (svm_scaled's
    # decision and the pair head's fused logit, combined by a logistic regression fitted on the
    # validation trials).
    c.eval.enrollment = "none"
    # What scores the trials: 'model' (the trained network), or the untrained ink-darkness controls
    # of siamjax/ink_baseline.py, 'ink' (the questioned scan's darkness) and 'ink_pair' (its
    # difference from the references'); those need no checkpoint.
    c.eval.scorer = "model"
    # Per-writer thresholds (needs references >= 2): each writer's threshold moves with how its
    # references score against each other (enrolment only): t_w = t + (m_w - mean over the
    # validation writers of m_w), with t chosen on validation.
    c.eval.user_thresholds = False
    # Cross-dataset evaluation: '' evaluates the training dataset; a dataset name ('cedar',
    # 'sigcomp2011', ...) evaluates that dataset's --split writers (its own writer split by
    # config.split and config.seed, prepared at image_height x image_width) with the threshold
    # still chosen on the training dataset's validation. Writes <workdir>/eval/<dataset>_<split>/.
    c.eval.dataset = ""

    # ---- Training loop ------------------------------------------------------------------------
    c.batch_size = 32  # Global pairs per step, split over all devices; a multiple of the devices.
    c.num_epochs = 6  # Length of training, in epochs of training pairs.
    c.num_train_steps = -1  # If > 0 overrides num_epochs.
    c.eval_batch_size = 128  # Images per step when computing embeddings for evaluation.
    c.log_every_steps = 50
    c.eval_every_steps = 500  # Validation (EER, accuracy); also at the end.
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 2  # Latest N kept, plus the best by validation EER.
    # A step whose loss or gradients hold a NaN or Inf never changes the state. False: training
    # stops with an error naming the step (exit code 3), the last checkpoint stays the latest.
    # True: such steps are skipped and counted (a warning, and skipped_nonfinite_steps in
    # summary.json). Checked where metrics are fetched anyway: at log steps and before each save.
    c.skip_nonfinite_steps = False
    c.prefetch = 2  # Batches prepared ahead of the device.
    # Training images up to this size (MiB) are copied to every device once, and the train step
    # gathers each pair batch from them: tf.data then feeds only indices, and no image crosses
    # from the host per step. Larger datasets are gathered on the host by tf.data. 0: always host.
    c.device_images_max_mb = 4096

    c.lock()
    return c
